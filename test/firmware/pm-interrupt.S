// A 64 KiB test "firmware" that asks whether the CPU under it runs a 32-bit protected-mode interrupt: INT n
// through an IDT interrupt gate and the handler's IRET back (Intel SDM vol. 3A 6.12.1, vol. 2A INT n/IRET).
// 32-bit boot code lives on this: iPXE and SYSLINUX take their timer interrupt so. On hardware KVM, in QEMU's
// TCG and on a hardware-style nested KVM it ends through isa-debug-exit (port 0xf4) with status
// (PM_INTERRUPT_OK << 1) | 1 = 0x43; an instruction emulator that cannot run INT or IRET in protected mode stops
// it there instead (KVM_EXIT_INTERNAL_ERROR, emulation failure). The handler counts into memory, so a return
// that skipped it is told apart (status 0x45).
// Built by the integration tests with gcc and ld, as test/firmware/reset-ways.S is.
    .set PM_INTERRUPT_OK, 0x21
    .set HANDLER_SKIPPED, 0x22
    .set ROM_BASE, 0xf0000      // the ROM's copy below 1 MiB, where CS (0xF000) points after the reset jump
    .set COUNT, 0x500           // the handler's counter (low RAM)
    .set STACK_TOP, 0x7000

    .code16
    .section .text
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movl $0, COUNT
    lgdtl %cs:gdt_pointer
    lidtl %cs:idt_pointer
    movl %cr0, %eax
    orb $1, %al
    movl %eax, %cr0
    ljmpl $0x08, $(ROM_BASE + protected)

    .code32
protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $STACK_TOP, %esp
    int $0x30
    cmpl $1, COUNT
    jne skipped
    movb $PM_INTERRUPT_OK, %al
    jmp report
skipped:
    movb $HANDLER_SKIPPED, %al
report:
    outb %al, $0xf4
1:  hlt
    jmp 1b

handler:
    incl COUNT
    iret

    .p2align 3
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff    // 0x08: flat 32-bit code
    .quad 0x00cf93000000ffff    // 0x10: flat data
gdt_pointer:
    .word gdt_pointer - gdt - 1
    .long ROM_BASE + gdt

    .p2align 3
idt:                            // vectors 0..0x30; only 0x30 is present, a fault anywhere else is a triple fault
    .fill 0x30, 8, 0
    .word handler               // offset 15..0 (the ROM is 64 KiB: the handler's offset in it)
    .word 0x08
    .word 0x8e00                // present, DPL 0, 32-bit interrupt gate
    .word ROM_BASE >> 16        // offset 31..16
idt_end:
idt_pointer:
    .word idt_end - idt - 1
    .long ROM_BASE + idt

    .org 0xfff0
    .code16
    ljmp $0xf000, $_start
    .org 0x10000
