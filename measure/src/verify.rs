//! The verifier (placeholder while the slice lands).
