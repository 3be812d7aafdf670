#[test]
fn scratch() {
    let data = std::fs::read("/work/shared/corpus/bad/truncated.jpg").unwrap();
    let r = image::load_from_memory(&data);
    match r {
        Ok(img) => {
            let rgb = img.to_rgb8();
            let h = rgb.height();
            let last = rgb.get_pixel(100, h - 1);
            let mid = rgb.get_pixel(100, h / 3);
            eprintln!(
                "decoded OK {}x{} last-row px {:?} row h/3 {:?}",
                rgb.width(),
                h,
                last,
                mid
            );
            // count rows that are uniform
            let mut uniform = 0;
            for y in 0..h {
                let p0 = rgb.get_pixel(0, y);
                if (0..rgb.width()).all(|x| rgb.get_pixel(x, y) == p0) {
                    uniform += 1;
                }
            }
            eprintln!("uniform rows {uniform}");
        }
        Err(e) => eprintln!("error {e}"),
    }
}
