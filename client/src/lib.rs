//! The native Sluice client (work in progress).
