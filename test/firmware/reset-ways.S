// A 64 KiB test "firmware" that resets the machine three ways and counts boots in CMOS RAM (byte 0x40, which a
// reset keeps, as on a PC): boot 1 resets through port 0x92 (fast reset), boot 2 through 0xCF9 (PIIX3 reset
// control), boot 3 through the i8042 (command 0xFE); boot 4 reports the count through isa-debug-exit, so the VM
// ends with status (4 << 1) | 1 = 9. Built by test/integration/firmware-pc.test.ts with gcc and ld.
    .code16
    .section .text
    .globl _start
_start:
    cli
    movb $0x40, %al
    outb %al, $0x70
    inb $0x71, %al
    incb %al
    movb %al, %bl
    movb $0x40, %al
    outb %al, $0x70
    movb %bl, %al
    outb %al, $0x71
    cmpb $1, %bl
    je via92
    cmpb $2, %bl
    je viacf9
    cmpb $3, %bl
    je viakbd
    movb %bl, %al
    outb %al, $0xf4
1:  hlt
    jmp 1b
via92:
    inb $0x92, %al
    orb $1, %al
    outb %al, $0x92
    jmp .
viacf9:
    movw $0xcf9, %dx
    movb $0x06, %al
    outb %al, %dx
    jmp .
viakbd:
    movb $0xfe, %al
    outb %al, $0x64
    jmp .
    .org 0xfff0
    ljmp $0xf000, $_start
    .org 0x10000
