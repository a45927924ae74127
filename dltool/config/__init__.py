"""The config stage: YAML loading, `base:` inheritance, overrides and validation (load), the
`{Name: args}` spec form (spec) and the registries that name layers, datasets and optimizers (registry).

It may import errors only: no torch-using package (data, models, store, training, ...) and never cli.
Registries fill themselves by module name at first use, which is not an import of those packages.
"""
