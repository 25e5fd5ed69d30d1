import os
import sys

# make tests/helpers.py importable as `helpers` from every test module
sys.path.insert(0, os.path.dirname(__file__))
