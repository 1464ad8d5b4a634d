//! Custom ops with their CPU twins: the fused norms, GEMMs, SwiGLU and NLL (`fused`), the
//! attention capture (`capture`), the chunked attention kernels that are always built
//! (`attention`), cuDNN's fused attention (`cudnn`, behind its feature) and the op timer
//! (`profile`). CUDA code is gated at these module boundaries.

pub mod attention;
pub mod capture;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod fused;
pub mod profile;
