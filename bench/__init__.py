"""celeriac's benchmark suite: ``python -m bench`` (``make bench``). See ``bench/__main__.py``.

Kept free of imports so that peer drivers, which run in another virtualenv, can import
``bench.common`` (standard library only).
"""
