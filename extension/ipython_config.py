# Loads recdebug's %%recloop magic in every IPython shell and Jupyter kernel of this profile.
# To turn it on: copy this file to $(ipython locate profile)/ipython_config.py (or add the line below to yours).
c = get_config()  # noqa: F821 (provided by IPython when it reads the file)
c.InteractiveShellApp.extensions = ["recdebug"]
