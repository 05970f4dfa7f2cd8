//! `waypoint`: HBONE listener (15008) → the L7 engine → HBONE to the chosen endpoint.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    eprintln!("waypoint: not implemented yet");
    std::process::exit(2);
}
