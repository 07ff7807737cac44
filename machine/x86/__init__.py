"""x86 knowledge the CPU layer needs beside the engine: instruction decoding (decode.py), the
interrupt and exception delivery QEMU does in its helpers (deliver.py), and the `-d int` /
`-d cpu` register log lines (cpulog.py)."""
