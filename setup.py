from setuptools import find_packages, setup

# Versions tested together (see docs/versions.md); RETURNN's wheel does not declare dm-tree and h5py, so they are listed here.
TF_VERSION = "2.21.0"
LAB = ["jupyterlab==4.6.6", "notebook==7.6.5", "ipykernel==7.4.0", "nbclient==0.11.0", "nbformat==5.11.1",
       "nbconvert==7.17.2"]

setup(
    name="recdebug",
    version="0.1.0",
    description="Write recurrent loops with Loop/State, run them on RETURNN, and step through them",
    packages=find_packages(include=["recdebug", "recdebug.*"]),
    python_requires=">=3.10",
    install_requires=[
        f"tensorflow-cpu=={TF_VERSION}",
        "returnn==1.20261022.211313",
        "dm-tree==0.1.10",
        "h5py==3.14.0",
        "numpy==2.4.6",
        "ipywidgets==8.1.9",
        "anywidget==0.11.0",
        "matplotlib==3.11.2",
        "tqdm==4.70.1",
    ],
    extras_require={
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        "lab": LAB,
        "test": LAB + ["pytest==9.2.0", "playwright==1.65.2", "hypothesis==6.170.17", "pytest-xdist==3.8.0",
                 "import-linter==2.17"],
    },
    # the widgets' browser modules, found here when recdebug is installed without its source tree
    data_files=[("share/recdebug/extension", ["extension/heatmap.js", "extension/tree.js", "extension/beamtree.js",
                                              "extension/ipython_config.py"])],
)
