// esbuild bundles imported stylesheets into main.css.
declare module '*.css';

// cytoscape-fcose ships no types: it is a cytoscape extension (cytoscape.use).
declare module 'cytoscape-fcose' {
  const ext: import('cytoscape').Ext;
  export default ext;
}
