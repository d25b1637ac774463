"""Static files of the web UI.

This directory is a package only so that `importlib.resources` can find the files
inside a wheel or a zipapp; there is no Python code here.
"""
