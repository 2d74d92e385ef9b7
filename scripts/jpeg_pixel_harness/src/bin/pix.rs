fn main() {
    jpeg_pixel_harness::harness::run()
}
