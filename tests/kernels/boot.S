/* Multiboot v1 header and entry point of the test kernels. */
#define MB_MAGIC  0x1BADB002
#define MB_FLAGS  0x00000003        /* page-aligned modules, memory information */

        .section .multiboot, "a"
        .balign 4
        .long   MB_MAGIC
        .long   MB_FLAGS
        .long   -(MB_MAGIC + MB_FLAGS)

        .text
        .globl  _start
_start:
        /* The loader leaves ESP undefined: use our own stack.  EAX = boot magic, EBX = info. */
        movl    $stack_top, %esp
        pushl   $0                  /* EFLAGS: clean (direction flag, interrupts off) */
        popfl
        pushl   %ebx
        pushl   %eax
        call    kmain
1:      cli
        hlt
        jmp     1b

        .bss
        .balign 16
        .space  16384
stack_top:

        .section .note.GNU-stack, "", @progbits
