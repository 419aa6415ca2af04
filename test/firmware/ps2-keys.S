// A 64 KiB test "firmware" that shows what the PS/2 keyboard sends: it sets up the i8042 (IBM PC AT technical
// reference, 8042 keyboard controller: command byte with translation on, interrupts off), enables the keyboard's
// scanning (command 0xF4, answered by ACK 0xFA) and then polls the controller's status register and prints every
// keyboard byte on COM1 as "key XX" (hex, scan code set 1 as translation makes it). Mouse bytes are dropped.
// Polling, no interrupts: it works under any CPU emulator, so a test of the screen's keyboard (viewer → RFB →
// i8042) depends on nothing but that path. Prints "ps2-keys: ready" once the keyboard is scanning.
// Built by the integration tests with gcc and ld, as test/firmware/reset-ways.S is.
    .set COM1, 0x3f8
    .set STATUS, 0x64           // i8042 status (read) and command (write) register
    .set DATA, 0x60
    .set OBF, 0x01              // status: output buffer full (a byte to read at DATA)
    .set IBF, 0x02              // status: input buffer full (the controller has not taken the last write)
    .set AUX, 0x20              // status: the byte in the output buffer is the mouse's

    .code16
    .section .text
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ss
    movw $0x7000, %sp
    movw $0xf000, %ax
    movw %ax, %ds               // strings are in the ROM
    call drain
    movb $0x60, %al             // write the command byte:
    call command
    movb $0x40, %al             // translation on; keyboard and mouse clocks on; no IRQ 1 or 12
    call data_out
    call drain
    movb $0xf4, %al             // to the keyboard: enable scanning
    call data_out
1:  call data_in                // its ACK (0xFA); anything else left from before is dropped
    cmpb $0xfa, %al
    jne 1b
    movw $ready, %si
    call print
poll:
    call data_in_any
    testb $AUX, %ah
    jnz poll
    movb %al, %bl
    movw $key, %si
    call print
    movb %bl, %al
    shrb $4, %al
    call hex_digit
    movb %bl, %al
    call hex_digit
    movw $newline, %si
    call print
    jmp poll

// Waits until the controller has room, then writes AL to its command register.
command:
    call wait_room
    outb %al, $STATUS
    ret

// Waits until the controller has room, then writes AL to its data port.
data_out:
    call wait_room
    outb %al, $DATA
    ret

// Waits until the controller has taken the last byte written (status IBF clear); AL is kept.
wait_room:
    pushw %ax
2:  inb $STATUS, %al
    testb $IBF, %al
    jnz 2b
    popw %ax
    ret

// Waits for a byte: AL the byte, AH the status it came with.
data_in_any:
4:  inb $STATUS, %al
    testb $OBF, %al
    jz 4b
    movb %al, %ah
    inb $DATA, %al
    ret

// Waits for a keyboard byte (mouse bytes dropped): AL.
data_in:
    call data_in_any
    testb $AUX, %ah
    jnz data_in
    ret

// Reads and drops whatever the controller holds.
drain:
    inb $STATUS, %al
    testb $OBF, %al
    jz 5f
    inb $DATA, %al
    jmp drain
5:  ret

// Prints the low nibble of AL as a hex digit.
hex_digit:
    andb $0x0f, %al
    addb $'0', %al
    cmpb $'9', %al
    jbe putc
    addb $('a' - '0' - 10), %al
    // falls through

// Prints AL on COM1 once its transmitter holding register is empty (16550 LSR bit 5).
putc:
    pushw %dx
    pushw %ax
    movw $(COM1 + 5), %dx
6:  inb %dx, %al
    testb $0x20, %al
    jz 6b
    popw %ax
    movw $COM1, %dx
    outb %al, %dx
    popw %dx
    ret

// Prints the NUL-terminated string at DS:SI.
print:
    lodsb
    testb %al, %al
    jz 7f
    call putc
    jmp print
7:  ret

ready:   .asciz "ps2-keys: ready\r\n"
key:     .asciz "key "
newline: .asciz "\r\n"

    .org 0xfff0
    ljmp $0xf000, $_start
    .org 0x10000
