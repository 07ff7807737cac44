"""Symbol addresses read from a built ELF, so tests do not depend on one compiler's layout."""

from __future__ import annotations


def symbol(elf, name: str) -> int:
    """The address of the one symbol called `name` in the ELF's symbol table."""
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        (sym,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return sym["st_value"]
