//! Path normalization for matching. TODO(helper-router)
