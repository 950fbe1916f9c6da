"""Format registry: importing this package registers every format module.

Adding a format: write one module with a ``@register`` class (and a ``@builder`` for a new
checkpoint kind), then add its import below.
"""

# Import order is registry order: dense baselines first.
from . import dense  # noqa: F401, I001  (registration side effects)
from . import autoawq  # noqa: F401
from . import gptqmodel  # noqa: F401
from . import compressed_tensors  # noqa: F401
from . import gptq  # noqa: F401
from . import bitsandbytes  # noqa: F401
from . import torchao  # noqa: F401
from .base import BUILDERS, FORMATS, Format, LoadedModel, get_format, parse_formats  # noqa: F401
