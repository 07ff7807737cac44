/* Interrupt entry stubs for vectors 0..63. Each stub pushes a uniform frame (a dummy error code
 * where the CPU pushes none, then the vector number) and jumps to a common path that saves the
 * general registers and calls interrupt_dispatch(struct int_frame *) in interrupts.c. */

    .section .text


.macro STUB v
    .align 8
isr_stub_\v:
    .if !(\v == 8 || (\v >= 10 && \v <= 14) || \v == 17 || \v == 21)
    push  $0                           /* dummy error code keeps the frame layout fixed */
    .endif
    push  $\v
    jmp   isr_common
.endm

.altmacro
.set i, 0
.rept 64
    STUB %i
    .set i, i + 1
.endr

isr_common:
    pusha                              /* EAX ECX EDX EBX ESP EBP ESI EDI */
    cld
    mov   %esp, %eax
    push  %eax                         /* struct int_frame * */
    call  interrupt_dispatch
    add   $4, %esp
    popa
    add   $8, %esp                     /* drop vector and error code */
    iret

/* Table of stub addresses, so C can fill the IDT without knowing the stub size. */
    .section .rodata
    .align 4
    .global isr_stub_table
isr_stub_table:
.set i, 0
.macro STUBADDR v
    .long isr_stub_\v
.endm
.rept 64
    STUBADDR %i
    .set i, i + 1
.endr

    .section .note.GNU-stack, "", @progbits
