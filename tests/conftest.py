"""Suite-wide collection order: files with a `slow` test run first, so that when pytest-xdist
spreads the files over workers (setup.cfg: `-n auto --dist loadfile`) the long files start early
and the workers finish together instead of one worker running a long file at the end."""


def pytest_collection_modifyitems(config, items):
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: keeps each file's order
