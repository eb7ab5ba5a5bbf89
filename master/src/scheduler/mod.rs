//! The scheduler: places pods without `spec.nodeName` on nodes, writing only `pods/binding`.
