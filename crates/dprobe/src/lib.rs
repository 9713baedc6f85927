//! dprobe
