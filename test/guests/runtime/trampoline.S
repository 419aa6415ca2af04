/* Application-processor start-up code. The BSP copies [ap_trampoline, ap_trampoline_end) to
 * TRAMPOLINE_BASE (below 1 MiB, 4 KiB aligned) and sends INIT/SIPI with vector TRAMPOLINE_BASE >> 12.
 * The AP starts in real mode at CS = vector << 8, IP = 0, then goes to protected mode and long mode with the
 * BSP's page tables and jumps to ap_entry64 in the kernel image. Only the 16-bit part is position-relative. */
#define TRAMPOLINE_BASE 0x10000
#define REL(x) (TRAMPOLINE_BASE + ((x) - ap_trampoline))

	.section .rodata
	.globl ap_trampoline, ap_trampoline_end
	.code16
ap_trampoline:
	cli
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (ap_gdt_desc - ap_trampoline)
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $0x08, $REL(ap_pm32)

	.code32
ap_pm32:
	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl %cr4, %eax
	orl $0x20, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $0xC0000080, %ecx
	rdmsr
	orl $0x100, %eax
	wrmsr
	movl %cr0, %eax
	orl $0x80000000, %eax
	movl %eax, %cr0
	ljmpl $0x18, $ap_entry64

	.align 8
ap_gdt:
	.quad 0
	.quad 0x00cf9a000000ffff
	.quad 0x00cf92000000ffff
	.quad 0x00af9a000000ffff
ap_gdt_desc:
	.word ap_gdt_desc - ap_gdt - 1
	.long REL(ap_gdt)
ap_trampoline_end:

	.text
	.code64
/* Each AP takes the next stack from ap_stacks and calls ap_main(). */
ap_entry64:
	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl $1, %eax
	lock xaddl %eax, ap_stack_next(%rip)
	incl %eax
	shlq $12, %rax
	leaq ap_stacks(%rip), %rsp
	addq %rax, %rsp
	call ap_main
1:	cli
	hlt
	jmp 1b

	.data
	.align 4
ap_stack_next:
	.long 0
	.bss
	.align 4096
	.globl ap_stacks
ap_stacks:
	.skip 65 * 4096
