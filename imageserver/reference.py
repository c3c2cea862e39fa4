"""The configuration reference, generated from `options.Config` (so it cannot drift).

``python -m imageserver.reference > docs/configuration.md`` writes it; a test fails when the file
and the flags disagree.
"""

from __future__ import annotations

from imageserver.options import CONFIG_FIELDS, Config

HEADER = """# Configuration reference

Generated from `imageserver/options.py` by
`python -m imageserver.reference > docs/configuration.md`; a test fails when they disagree.

Every flag works with `image-server server`, `twistd imageserver` and (where it means something)
`image-server cli`. Dashes and underscores are interchangeable (`--max-file-age` is
`--max_file_age`); booleans take `--flag`, `--flag=true` or `--flag=false`. A flag not given falls
back to its environment variable, then to the default. A bad value stops start-up with one line
naming the flag.

| flag | environment | default | meaning |
|---|---|---|---|
"""


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "none"
    if value == "":
        return "none"
    return f"`{value}`"


def render() -> str:
    rows = []
    for name, config_field in CONFIG_FIELDS.items():
        variables = [Config.env_name(name), *config_field.metadata["env"]]
        default = _default(config_field.default)
        if name == "processor_concurrency":
            default = "the number of CPUs the server may use"
        rows.append(
            f"| `--{Config.flag_name(name)}` | {', '.join(f'`{v}`' for v in variables)} "
            f"| {default} | {config_field.metadata['help']} |"
        )
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
