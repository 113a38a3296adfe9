"""Tests run in float64: Hessians and tight tolerances need it. bodil itself never sets this globally."""

import jax

jax.config.update("jax_enable_x64", True)
