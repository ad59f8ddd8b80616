fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(mde_offboard::cli::main())
}
