"""Private implementation modules of nc_jax; import from `nc_jax` instead."""
