"""The engine-free core: the budget and its limits, model profiles, the forcing state machine and
the device layout it is written to. Imports neither vLLM nor torch (`layout` and `draws` hold only
constants and integer arithmetic)."""
