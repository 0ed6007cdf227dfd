//! Tracking messages (Segment spec). Being written.
