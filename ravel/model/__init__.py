"""Pure blueprint model: YAML text -> validated, expanded Blueprint. No I/O beyond the text given."""
