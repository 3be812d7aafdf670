//! fast_image_resize alone: Lanczos3, RGB8, a synthetic image (default 4000×3000 to
//! 800×600), with each CPU extension set the machine has (best of 10).
//!
//! ```sh
//! cargo run --release -p pixpool-imaging --example fir_speed [-- W H OUT_W OUT_H]
//! ```

use std::time::Instant;

use fast_image_resize::images::Image;
use fast_image_resize::{CpuExtensions, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a size"))
        .collect();
    let [w, h, ow, oh] = sizes[..] else {
        return run(4000, 3000, 800, 600);
    };
    run(w, h, ow, oh);
}

fn run(w: u32, h: u32, ow: u32, oh: u32) {
    let data: Vec<u8> = (0..w as usize * h as usize * 3)
        .map(|i| ((i * 7919) % 251) as u8)
        .collect();
    let src = Image::from_vec_u8(w, h, data, PixelType::U8x3).expect("image");
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    let mut resizer = Resizer::new();
    println!("detected: {:?}", resizer.cpu_extensions());
    for ext in [
        CpuExtensions::None,
        CpuExtensions::Sse4_1,
        CpuExtensions::Avx2,
    ] {
        if !ext.is_supported() {
            continue;
        }
        // SAFETY: only extensions the CPU reports are set.
        unsafe { resizer.set_cpu_extensions(ext) };
        let mut best = f64::MAX;
        for _ in 0..10 {
            let mut dst = Image::new(ow, oh, PixelType::U8x3);
            let t = Instant::now();
            resizer.resize(&src, &mut dst, &options).expect("resize");
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("{ext:?}: {best:.1} ms");
    }
    // A fresh resizer and destination each time, as the pipeline has per job.
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        let mut fresh = Resizer::new();
        let mut dst = Image::new(ow, oh, PixelType::U8x3);
        fresh.resize(&src, &mut dst, &options).expect("resize");
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("fresh resizer: {best:.1} ms");
    {}
}
