"""meson's entry point for one integration test file: exits 77 (meson's
"skipped") when pytest or requests are missing, else runs pytest on it."""
import os
import sys

try:
    import pytest  # noqa: F401
    import requests  # noqa: F401
except ImportError as e:
    print("skipping: %s (pip install -r tests/integration/requirements.txt)" % e)
    sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
args = [os.path.join(here, f) for f in sys.argv[1:]] or [here]
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic"] + args))
