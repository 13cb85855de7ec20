"""meson's entry point for the conformance tests: exits 77 (meson's
"skipped") when llama-cpp-python, gguf or pytest are missing, else runs
pytest on the given files."""
import os
import sys

try:
    import gguf  # noqa: F401
    import llama_cpp  # noqa: F401
    import pytest
except ImportError as e:
    print("skipping: %s (pip install -r tests/conformance/requirements.txt)" % e)
    sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
args = [os.path.join(here, f) for f in sys.argv[1:]] or [here]
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic"] + args))
