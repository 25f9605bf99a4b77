//! Drawbridge server crate (being built; see the crate map once modules land).
