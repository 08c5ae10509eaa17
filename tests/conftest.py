"""pytest setup shared by every Python test: makes tests/testpaths.py importable from any test folder."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
