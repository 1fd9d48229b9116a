"""Models on disk: the model folder format (``folder``: model.json card + safetensors weights), the local store and
catalog (``store``), official RepUX-Net checkpoint import (``official``) and the model-id rule (``ids``)."""
