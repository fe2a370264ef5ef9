use clap::Parser;

fn main() {
    let cli = keysync::cli::Cli::parse();
    std::process::exit(keysync::cli::run(cli));
}
