from setuptools import find_packages, setup

# Versions tested together (see README); RETURNN's wheel does not declare dm-tree and h5py, so they are listed here.
TF_VERSION = "2.21.0"

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
    ],
    extras_require={
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        "test": ["pytest==9.2.0"],
    },
)
