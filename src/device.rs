//! Choosing the Burn device: `flex` (pure-Rust CPU, the fallback), `wgpu` (a GPU through
//! Vulkan/Metal/DX12), or `wgpu-cpu` (the wgpu code path on the CPU through Mesa lavapipe,
//! which is how tests cover GPU code on machines without a GPU).
//!
//! The binary resolves `--device` once ([`resolve`]) and hands the result to every stage in
//! [`crate::Globals`]: no stage probes adapters again.

use crate::error::{Error, Result};
use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

crate::vocab::named_enum!(DeviceChoice {
    Auto => "auto",
    Flex => "flex",
    Wgpu => "wgpu",
    WgpuCpu => "wgpu-cpu",
});

/// A resolved device and a human description of what was chosen and why.
#[derive(Clone, Debug)]
pub struct ChosenDevice {
    pub device: Device,
    pub name: String,
    /// Never `Auto`: what `auto` resolved to.
    pub choice: DeviceChoice,
}

impl ChosenDevice {
    /// Burn's CPU backend; probes nothing.
    pub fn flex() -> ChosenDevice {
        ChosenDevice {
            device: Device::flex(),
            name: "flex (CPU)".into(),
            choice: DeviceChoice::Flex,
        }
    }
}

/// A wgpu adapter this machine offers.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub name: String,
    pub device_type: wgpu::DeviceType,
    pub backend: wgpu::Backend,
}

impl Adapter {
    pub fn is_gpu(&self) -> bool {
        matches!(
            self.device_type,
            wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
        )
    }
    pub fn is_cpu(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
    fn describe(&self) -> String {
        format!("{} ({:?}, {:?})", self.name, self.device_type, self.backend)
    }
}

/// The wgpu adapters this machine offers. Only the backends Burn's wgpu runtime uses are
/// probed (Vulkan, Metal, DX12): the OpenGL one would ask EGL for a Wayland display and print
/// `XDG_RUNTIME_DIR is invalid or not set` on every headless machine, for nothing.
pub fn wgpu_adapters() -> Vec<Adapter> {
    let backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    // The instance, not only the enumeration, must leave GL out: creating a GL instance is
    // what asks EGL for a display.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    futures_lite::future::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            Adapter {
                name: info.name,
                device_type: info.device_type,
                backend: info.backend,
            }
        })
        .collect()
}

/// Resolve a `--device` choice to a device; `auto` probes the adapters once.
pub fn resolve(choice: DeviceChoice) -> Result<ChosenDevice> {
    let chosen = match choice {
        DeviceChoice::Flex => ChosenDevice::flex(),
        DeviceChoice::Wgpu => ChosenDevice {
            device: Device::wgpu(DeviceKind::DefaultDevice),
            name: "wgpu (default adapter)".into(),
            choice,
        },
        DeviceChoice::WgpuCpu => {
            if !wgpu_adapters().iter().any(Adapter::is_cpu) {
                return Err(Error::input(
                    "--device wgpu-cpu needs a CPU Vulkan driver; install it with \
                     `apt-get install mesa-vulkan-drivers` (scripts/setup.sh does this)",
                ));
            }
            ChosenDevice {
                device: Device::wgpu(DeviceKind::Cpu),
                name: "wgpu on the CPU (lavapipe)".into(),
                choice,
            }
        }
        DeviceChoice::Auto => match wgpu_adapters().into_iter().find(Adapter::is_gpu) {
            Some(gpu) => ChosenDevice {
                device: Device::wgpu(DeviceKind::DefaultDevice),
                name: format!("wgpu: {}", gpu.describe()),
                choice: DeviceChoice::Wgpu,
            },
            None => ChosenDevice {
                device: Device::flex(),
                name: "flex (CPU; no GPU adapter found)".into(),
                choice: DeviceChoice::Flex,
            },
        },
    };
    tracing::info!("device: {}", chosen.name);
    Ok(chosen)
}

/// Batches (or shards of one training step) worth running at once on `device`: one per thread
/// of rayon's pool on flex, whose element-wise ops, gathers, scatters and layer norms run on
/// the calling thread, so that one batch at a time leaves the other cores idle between its
/// parallel GEMMs (a classifier training run used 1.25 of 2 cores); 1 elsewhere (a GPU takes
/// one batch at a time and fills itself). At most [`MAX_BATCHES_IN_FLIGHT`].
pub fn batches_in_flight(device: &Device) -> usize {
    if *device == Device::flex() {
        rayon::current_num_threads().clamp(1, MAX_BATCHES_IN_FLIGHT)
    } else {
        1
    }
}

/// Each batch in flight holds its own activations (a detector scoring batch: about 100 MB),
/// and past a few the parallel kernels already keep the other cores busy; measured on 2 cores
/// only (docs/benchmarks.md), so this is a guard for large machines, not a tuned value.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// `compute` over `batches`, [`batches_in_flight`] at a time on rayon's pool, handing each
/// result to `consume` in the batches' order. Each batch's result is what `compute` gives it
/// alone: how many run at once changes the speed, never the output.
pub fn for_each_batch<B, R>(
    device: &Device,
    batches: Vec<B>,
    compute: impl Fn(&B) -> R + Sync,
    mut consume: impl FnMut(B, R),
) where
    B: Send + Sync,
    R: Send,
{
    use rayon::prelude::*;
    let wave = batches_in_flight(device);
    let mut batches = batches.into_iter().peekable();
    while batches.peek().is_some() {
        let now: Vec<B> = batches.by_ref().take(wave).collect();
        let results: Vec<R> = if now.len() == 1 {
            vec![compute(&now[0])]
        } else {
            now.par_iter().map(&compute).collect()
        };
        for (batch, result) in now.into_iter().zip(results) {
            consume(batch, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_in_flight_come_back_in_order_with_their_own_results() {
        let batches: Vec<usize> = (0..23).collect();
        let mut seen = Vec::new();
        // Uneven work, so that a later batch of a wave can finish first.
        let slow_square = |&b: &usize| {
            std::thread::sleep(std::time::Duration::from_millis(((23 - b) % 4) as u64));
            b * b
        };
        for_each_batch(&Device::flex(), batches, slow_square, |b, r| {
            seen.push((b, r))
        });
        let expected: Vec<(usize, usize)> = (0..23).map(|b| (b, b * b)).collect();
        assert_eq!(seen, expected);
        assert_eq!(
            batches_in_flight(&Device::flex()),
            rayon::current_num_threads()
        );
    }
}
