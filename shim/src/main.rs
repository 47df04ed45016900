fn main() {
    std::process::exit(conrdma_shim::main_with(std::env::args().skip(1).collect()));
}
