import os
import sys

# tests/ (ocr_reference) and the repository root (tests.*, ocr_tf) importable from here.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE), os.path.dirname(os.path.dirname(HERE))]
