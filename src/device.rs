//! Choosing the Burn device: `flex` (pure-Rust CPU, the fallback), `wgpu` (a GPU through
//! Vulkan/Metal/DX12), or `wgpu-cpu` (the wgpu code path on the CPU through Mesa lavapipe,
//! which is how tests cover GPU code on machines without a GPU).

use crate::error::{Error, Result};
use burn::tensor::{Device, DeviceKind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// A real GPU through wgpu if one exists, else flex.
    Auto,
    /// Burn's pure-Rust CPU backend.
    Flex,
    /// The best wgpu adapter (a GPU; honours CUBECL_WGPU_DEFAULT_DEVICE).
    Wgpu,
    /// wgpu on the CPU adapter (Mesa lavapipe; `apt-get install mesa-vulkan-drivers`).
    WgpuCpu,
}

/// A resolved device and a human description of what was chosen and why.
#[derive(Clone, Debug)]
pub struct ChosenDevice {
    pub device: Device,
    pub name: String,
    /// Never `Auto`: what `auto` resolved to.
    pub choice: DeviceChoice,
}

/// The wgpu adapters this machine offers, as (name, type, backend) strings.
pub fn wgpu_adapters() -> Vec<(String, String, String)> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::default();
    let adapters =
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            (
                info.name,
                format!("{:?}", info.device_type),
                format!("{:?}", info.backend),
            )
        })
        .collect()
}

fn has_real_gpu() -> Option<String> {
    wgpu_adapters()
        .into_iter()
        .find(|(_, kind, _)| kind == "DiscreteGpu" || kind == "IntegratedGpu")
        .map(|(name, kind, backend)| format!("{name} ({kind}, {backend})"))
}

pub fn resolve(choice: DeviceChoice) -> Result<ChosenDevice> {
    let (device, name) = match choice {
        DeviceChoice::Flex => (Device::flex(), "flex (CPU)".to_string()),
        DeviceChoice::Wgpu => (
            Device::wgpu(DeviceKind::DefaultDevice),
            "wgpu (default adapter)".into(),
        ),
        DeviceChoice::WgpuCpu => {
            if wgpu_adapters().iter().all(|(_, kind, _)| kind != "Cpu") {
                return Err(Error::input(
                    "--device wgpu-cpu needs a CPU Vulkan driver; install it with \
                     `apt-get install mesa-vulkan-drivers` (scripts/setup.sh does this)",
                ));
            }
            (
                Device::wgpu(DeviceKind::Cpu),
                "wgpu on the CPU (lavapipe)".into(),
            )
        }
        DeviceChoice::Auto => match has_real_gpu() {
            Some(gpu) => (
                Device::wgpu(DeviceKind::DefaultDevice),
                format!("wgpu: {gpu}"),
            ),
            None => (Device::flex(), "flex (CPU; no GPU adapter found)".into()),
        },
    };
    // `auto` resolves to what it picked, so callers can reuse the choice without probing again.
    let choice = match choice {
        DeviceChoice::Auto if name.starts_with("wgpu") => DeviceChoice::Wgpu,
        DeviceChoice::Auto => DeviceChoice::Flex,
        c => c,
    };
    tracing::info!("device: {name}");
    Ok(ChosenDevice {
        device,
        name,
        choice,
    })
}
