//! TODO(vm): the VM runner
