// A labelled form field whose error (from the API's 400 `path`, or the form's own checks) sits right under it,
// tied to the input with aria-describedby so screen readers read it too.
import type { ComponentChildren } from 'preact';

export function Field(props: {
  id: string;
  label: string;
  hint?: string;
  error?: string;
  children: ComponentChildren;
}) {
  return (
    <div class={`field ${props.error ? 'field-invalid' : ''}`}>
      <label for={props.id}>{props.label}</label>
      {props.children}
      {props.hint && !props.error && <small class="muted">{props.hint}</small>}
      {props.error && (
        <small class="field-error" id={`${props.id}-error`} role="alert" data-testid={`error-${props.id}`}>
          {props.error}
        </small>
      )}
    </div>
  );
}

/** The form field an API error's JSON path points at: "/memory", "/body/memory" and "/spec/memory" → "memory". */
export function fieldOfPath(path: string | undefined, fields: readonly string[]): string | null {
  if (!path) return null;
  const segments = path.split('/').filter(Boolean);
  for (let i = segments.length - 1; i >= 0; i--) if (fields.includes(segments[i])) return segments[i];
  return null;
}
