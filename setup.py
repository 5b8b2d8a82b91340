"""Maps the top-level operator/, workers/, kernels/ and sdk/ folders into the `shardwright` package.

Everything else about the distribution is in pyproject.toml; only the package list needs code.
"""

from setuptools import find_packages, setup

ROOTS = {f"shardwright.{top}": top for top in ("operator", "workers", "kernels", "sdk")}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS, package_data={"shardwright.operator": ["py.typed"]})
