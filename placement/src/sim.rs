//! Placement simulator (filled in below).
