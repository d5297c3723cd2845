"""Pure planning: placement of VMs on host types, network plan, the Plan value and its JSON."""
