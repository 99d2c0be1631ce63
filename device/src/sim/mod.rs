//! TODO(sim): the simulated guest
