//! The forward pass of every supported family (LLaMA, Mistral, Qwen2, Qwen3) over token
//! ids: the model configuration and RoPE, the decoder layers, the attention dispatch (which
//! kernel computes the layer outputs, a value the model owns), packed spans, and devices.

pub mod bucket;
pub mod config;
pub mod device;
pub mod dispatch;
mod heads;
mod layer;
pub mod llama;
mod quantize;
pub mod rope;
mod rope_cache;
pub mod shapes;
pub mod spans;

pub use config::ModelConfig;
pub use device::{
    check_fp8, configure_matmul, free_memory, open_device, release_cached_memory, Compute,
    DeviceChoice,
};
pub use llama::{ForwardOutput, Llama};
pub use quantize::Fp8Scales;
