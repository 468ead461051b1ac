//! The ingress routes, one module each.

pub mod health;
pub mod login;
pub mod order;
